"""The Metrics API: routes, rendering, selectors, discovery and Status errors."""
