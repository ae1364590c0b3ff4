import sys

from tf_batch_predict.pipeline.cli import main

sys.exit(main())
