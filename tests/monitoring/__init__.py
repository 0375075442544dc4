"""Tests of monitors, alerts and their notifications."""
