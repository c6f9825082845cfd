"""What step 2 (the data) needs besides its form widgets: checking typed numbers."""
