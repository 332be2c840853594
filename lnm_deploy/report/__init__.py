"""Reports people read: calibration reports and verification pages (JSON, PNG, offline HTML)."""
