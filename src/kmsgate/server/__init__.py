"""server layer of kmsgate."""
