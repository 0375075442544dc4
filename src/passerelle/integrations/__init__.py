"""Adapters for tools around passerelle (orchestrators). Each imports its tool lazily."""
