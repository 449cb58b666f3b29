"""VAI: validate AI models on a clinic's own data. Vendors (organisations with their own users) register
model versions (an ONNX file with its input contract, or results-only); a clinic project evaluates one on
a dataset version of its archive against its reference labels, as a resumable job whose predictions stay
in the project; the aggregate report (small cells suppressed, a CLAIM/TRIPOD-AI checklist attached) goes
to the vendor only after two reviewers approved it. The statistics are a pure engine (``vai.metrics``),
as is the preprocessing and inference (``vai.inference``). See docs/vai.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..capabilities import Config


def includeme(config: Config) -> None:
    config.add_models("strongroom.vai.models")
    config.add_api_router("strongroom.vai.api:router")
    config.add_web_router("strongroom.vai.web:router")
    config.add_templates(Path(__file__).parent / "templates")
    config.add_cli("strongroom.vai.cli:app", name="vai")
    config.add_jobs("strongroom.vai.jobs")
    config.add_project_setting("vai_evaluation_budget", "strongroom.vai.settings:BUDGET_SETTING")
