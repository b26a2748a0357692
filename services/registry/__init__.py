"""Registry service: the model catalog, its approval workflow, and prompt templates."""
