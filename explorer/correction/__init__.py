"""Stage 4, correction: ReGap and its drift estimate (regap), the peers' modes (peers), and generation with or without
a correction (generation).
"""
