"""What a run will do, derived from a checked model: its scenarios and uncertain draws, its settings (numpy only, no torch)."""
