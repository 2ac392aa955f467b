"""hlrp."""
