"""Kubelet scraping: address choice, the HTTPS client, the decoder, one task per node."""
