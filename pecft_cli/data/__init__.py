"""Task data: reading sources, rendering rows into examples, and the replay buffer."""
