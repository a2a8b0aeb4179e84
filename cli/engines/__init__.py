"""Engines that run a batch elsewhere than in this process."""
