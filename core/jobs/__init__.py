"""Jobs in SQL: status, lifecycle, results, predictions, export and comparison."""
