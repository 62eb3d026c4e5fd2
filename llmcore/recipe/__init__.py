"""The recipe contract: the registry, the typed contexts hooks receive, and the run's recipe set."""
