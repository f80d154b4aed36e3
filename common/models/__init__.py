"""Models as plug-ins: what a model provides (`base.ModelPlugin`) and where each is found
(`registry`). The CNN (`cnn`) and the measures model (`measures`) are two implementations;
a third is one module that subclasses ModelPlugin and is registered by name
(docs/design.md, "Adding a model")."""
