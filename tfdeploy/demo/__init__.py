"""The demo: a small DeepLab-v3 trained on synthetic scenes, and the scene generator."""
