"""Account backends for the login portal: local, LDAP, POP3 and SQL behind one interface."""
