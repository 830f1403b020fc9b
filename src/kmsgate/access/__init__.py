"""Who may use the host: source addresses, products, activation windows, quotas."""
