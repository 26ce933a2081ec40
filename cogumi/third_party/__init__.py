"""Code from other projects, vendored unmodified; each folder's VENDORED.md says what and why."""
