"""The sentence-ordering LightningModule (:mod:`.orderer`), its losses and its metrics."""
