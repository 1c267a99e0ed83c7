"""Stage 3, geometry of the captured states: the formulas of docs/method.md (formulas), the calibrated refusal profile
(profile) and 2-D maps of one layer (embedding).
"""
