"""Training: training sets from Feast, the frameworks' estimators, the train_model pipeline, retraining,
and (``scripts``) users' own training scripts."""
