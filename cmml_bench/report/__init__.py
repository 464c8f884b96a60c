"""Reading run folders and writing comparison reports (`compare`, `check`)."""
