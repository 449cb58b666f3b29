"""Public dataset catalogue: landing pages, search, JSON-LD, sitemaps."""
