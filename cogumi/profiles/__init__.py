"""Shipped profiles (TOML). Validated by cogumi.profile; one test loads every file here."""
