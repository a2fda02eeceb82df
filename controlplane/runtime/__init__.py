"""Runtime plumbing shared by the long-lived services: supervised tasks, clocks."""
