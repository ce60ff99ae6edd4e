"""Pictures: pose overlays, heatmap montages and augmented-sample previews."""
