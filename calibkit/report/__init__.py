"""Self-contained HTML report (jinja2 template, pandas tables, embedded matplotlib PNGs)."""
