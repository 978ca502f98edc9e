"""What only the config actor (`sopy.actors.config_store`) touches: the SQLite database, its schema
and migrations, and the sealing of provider credentials at rest (with secret-key rotation)."""
