"""What a run will do, from the checked model: scenarios, draws, settings, the code it names."""
