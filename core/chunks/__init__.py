"""The chunk lifecycle in SQL: claim, lease, finish, split and sweep."""
