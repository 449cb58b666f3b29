"""VAI's project setting: the evaluation budget. Each evaluation of a vendor's model is a question about the
project's patients, and the differences between many answers are what could single one patient out; so a
project evaluates one vendor's models (and the models one vendor user registered) only so often in a
period. Locked at the default; raising it is a change of the project's settings (manage-settings, fresh
MFA, audited)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..projects.settings import capability_setting

BUDGET = "vai_evaluation_budget"


class EvaluationBudget(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_vendor: int = Field(6, ge=1, le=100, description="evaluations of one vendor's models")
    per_submitter: int = Field(3, ge=1, le=100, description="evaluations of the models one vendor user registered")
    days: int = Field(30, ge=1, le=365, description="the period, in days up to now")


BUDGET_SETTING = capability_setting(
    BUDGET, "AI validation: evaluation budget",
    "How many evaluations of one vendor's models, and of the models one vendor user registered, the project "
    "runs in a period (failed ones do not count): every report answers a question about the same patients, "
    "and their differences are what could single one out. Default 6 per vendor and 3 per submitter in 30 days.",
    EvaluationBudget().model_dump(), EvaluationBudget, edit_page="/projects/{slug}/vai#budget")
