"""catalog layer of kmsgate."""
