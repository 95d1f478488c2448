"""Model cards and Hub publishing (issue 6)."""
