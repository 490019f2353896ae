"""The mini cluster: namespaces and links (netns.py), manifests, the endpoints controller."""
