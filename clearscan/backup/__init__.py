"""Backups that restore: `clearscan backup create | verify | restore | list`, and scheduled
backups through the job system. See docs/operations.md."""
