"""Settings of `kmsgate serve`: one model, how it is loaded, its errors in the user's words."""
