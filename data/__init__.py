"""Data for the Comparison Detector: conversion to TFRecords, input pipeline, samples."""
