"""The Streamlit dashboard (started by `benchbed dashboard`; nothing imports it)."""
