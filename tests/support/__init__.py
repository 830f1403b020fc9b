"""What the tests share: clients, nodes and real servers they start, record builders."""
