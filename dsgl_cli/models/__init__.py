"""dsgl_cli.models"""
