"""client layer of kmsgate."""
