"""Stage 6, the thin layers on top: the web app's handlers and session (ui, ui_session, ui_inputs, ui_export,
analysis), the command line (cli) and the model options both share (model_options).
"""
