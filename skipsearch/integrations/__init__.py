"""Consumers of exported schedules inside other libraries (`skipsearch.integrations.diffusers`).

They need nothing from the search: applying a schedules file pulls in neither Optuna nor
torch-fidelity.
"""
