"""The gradient-inversion attack (`fedpet attack`): what a server could read from updates."""
