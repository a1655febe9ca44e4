"""tidehost-update: the on-host update agent."""
