// The stylesheet is imported for its effect: the build bundles it beside the script.
declare module "*.css";
