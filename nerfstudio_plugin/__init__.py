"""nerfstudio adapter for da3-splat: the method ``da3-splat`` and the dataparser ``da3-images``.

    ns-train da3-splat --data SCENE nerfstudio-data --downscale-factor 4   # posed: cameras condition DA3
    ns-train da3-splat --data PHOTOS_OR_VIDEO da3-images                    # unposed: DA3 predicts the cameras
    ns-train da3-splat ... --pipeline.model.refine-steps 0                  # the feed-forward result only
    ns-train da3-splat ... --pipeline.model.weights depth-anything/DA3-GIANT  # any DA3 checkpoint
    ns-train da3-splat ... --machine.device-type cpu                        # CPU: the project's torch renderer

then ``ns-eval``, ``ns-export gaussian-splat``, ``ns-render dataset`` and ``ns-viewer`` as for splatfacto.

Thin on purpose: everything here subclasses or calls nerfstudio's API and delegates the work to ``da3_splat``
(which never imports this package). Kept free of heavy imports, because ``torchvision_compat`` may be imported
at interpreter start-up (see that module) and nerfstudio imports the entry points while building its CLI.

- ``config``: ``da3_splat_method`` (the method's entry point) and its optimiser settings
- ``model``: ``DA3SplatModel``, a ``SplatfactoModel`` that starts from DA3's Gaussians
- ``pipeline``: runs DA3 on the training views once the data is loaded; checks the data first
- ``dataparser``: ``da3-images`` (and its entry point), cameras predicted by DA3
- ``camera_refinement``: predicted cameras refined in training (camera optimiser), held-out poses aligned at eval
- ``initialise``: the starting Gaussians (DA3 feed-forward, or random points / a point cloud for comparison)
- ``errors``: one ``error:`` line for bad input inside nerfstudio's commands
"""
