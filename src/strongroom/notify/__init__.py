"""E-mail notifications: templated per role, sent by a durable job, with a daily digest for handlers."""
