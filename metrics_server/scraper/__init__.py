"""scraper package."""
