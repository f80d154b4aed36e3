"""Everything that runs at a hospital: loading, preprocessing, local training, the ClientApp."""
