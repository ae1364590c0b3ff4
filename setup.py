import warnings

import setuptools

# The code installs and imports as one package, tf_batch_predict, whatever the
# repository's folders are called: `pipeline` and `transforms` are names that
# many ML repositories use for modules of their own.
PACKAGE = 'tf_batch_predict'
FOLDERS = ('pipeline', 'transforms')
TEXT = 'tensorflow-text>=2.21.0,<2.22'  # the same minor version as tensorflow below
# An editable install (`make`) maps these folders to the package with an
# import hook, and setuptools then always warns that folders named like the
# package could shadow it: none is (there is no folder tf_batch_predict).
warnings.filterwarnings('ignore', message='Editable installation', category=UserWarning)

setuptools.setup(
    name='tf-batch-predict',
    version='0.1.0',
    description='Batch prediction for TensorFlow SavedModels on Apache Beam',
    package_dir={f'{PACKAGE}.{folder}': folder for folder in FOLDERS},
    packages=[f'{PACKAGE}.{package}'
              for package in setuptools.find_packages(include=[f'{f}*' for f in FOLDERS])],
    python_requires='>=3.10,<3.13',
    install_requires=[
        # Installed and tested together; see README "Dependencies".
        'apache-beam[gcp]>=2.77.0,<2.78',
        'tensorflow>=2.21.0,<2.22',
        'pyarrow>=25.0.0,<26',
        'google-cloud-storage>=3.17.0,<4',
        'numpy>=2.0,<3',
        'orjson>=3.10,<4',
        'pysimdjson>=7.0.2,<8',
        # evaluate: metrics and the report's plots
        'scikit-learn>=1.9.1,<1.10',
        'matplotlib>=3.11.2,<3.12',
    ],
    extras_require={
        # TensorFlow Text's ops (tokenizers inside SavedModels, as TF Serving
        # links them): released with TensorFlow's version numbers.
        'text': [TEXT],
        'test': ['pytest>=9,<10', 'gcp-storage-emulator>=2026.7.19', 'hypothesis>=6.170,<7',
                 TEXT],
        # Beam's TF model handler (the benchmark's peer) imports tensorflow_hub,
        # which still needs pkg_resources.
        'bench': ['tensorflow-hub>=0.16.1,<0.17', 'setuptools<81'],
    },
    entry_points={'console_scripts': [f'batch-predict={PACKAGE}.pipeline.cli:main']},
)
