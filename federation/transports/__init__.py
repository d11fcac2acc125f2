"""Transports: how a round's ``ServerMessage`` reaches the sampled clients and their ``ClientUpdate`` comes back."""
